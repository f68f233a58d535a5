"""What the Data section offers for a training on CT + label pairs: the segment names found in the chosen
segmentation nodes (or the structure names of a pairs folder) for the structure list, and the volume each
segmentation was drawn on (for pairing). Works on Slicer and on slicer-core; no torch.
"""

from __future__ import annotations

from pathlib import Path


def segment_names(seg_nodes) -> list[str]:
    """Every segment name of the segmentations, first appearance first (each once)."""
    names: dict[str, None] = {}
    for node in seg_nodes:
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            names.setdefault(segmentation.GetNthSegment(i).GetName(), None)
    return list(names)


def folder_structure_names(folder: str | Path) -> list[str]:
    """The structure names of a pairs folder (nnU-Net/Decathlon, TotalSegmentator, NAME + NAME.seg.nrrd); raises
    InputError (one sentence) when the folder holds no pairs."""
    from CTDiffusionLib.data.pairs import discover_pairs, structure_names

    return structure_names(discover_pairs(folder))


def drawn_on(seg_node):
    """The volume a segmentation was drawn on (its reference image geometry node), or None."""
    return seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole())
