"""Collection, on the training thread: find the embeddings and metadata in a batch, hash ids, keep
the bounded sample, gather it across ranks.
"""
