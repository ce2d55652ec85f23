"""The one owner of what spans validation runs: counters, pending runs, the previous run, the
cluster chain, the ledger, and how a chain's start is settled with its folder.
"""
