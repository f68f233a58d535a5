"""MRML scene code of the CTDiffusion Slicer module (pure Python; imports `slicer` MRML/util only, never qt or
torch). Submodules: core (scene + module logics, in Slicer or booted on slicer-core), nodes (export/import
nodes), comparison (side-by-side layout), plots (loss curve, metrics tables, histograms), sources (data
summary), scenario (end-to-end self-test). Import the submodule you need; this package imports nothing.
"""
