"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A problem with the user's input (path, recipe, image, index...).

    The CLI prints its message as one line on stderr and exits with status 2; anything else
    that escapes is a bug and keeps its traceback.
    """
