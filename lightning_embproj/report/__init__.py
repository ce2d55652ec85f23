"""After the run: the one-run report and the two-run comparison (`compare`).
"""
