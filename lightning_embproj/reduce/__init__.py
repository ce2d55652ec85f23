"""Reduction of one run: PCA, t-SNE (cold, and continued from the previous run), UMAP, alignment
with the previous run.
"""
