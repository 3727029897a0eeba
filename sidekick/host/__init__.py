"""The only code that touches the machine: files, processes, mounts, network.

Tools receive these objects as arguments, so their decisions are tested without root and
their effects are tested for real in a few end-to-end tests.
"""
