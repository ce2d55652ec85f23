"""Scores of one run: one nearest-neighbour pass, label metrics, drift, movers, embedding health.
"""
