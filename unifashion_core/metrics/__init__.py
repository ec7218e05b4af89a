"""Pure metrics: numbers from scores, embeddings, texts and images (no model, no files).

Training's validation and the benches both import them; neither imports the other.
"""
