"""Clusters from run to run: clustering one run, ids and lineage events across runs.
"""
