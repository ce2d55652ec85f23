"""The machinery around the stages: the background worker, the end-of-fit bar, warnings, the
Lightning namespaces.
"""
