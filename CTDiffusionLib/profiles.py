"""What each kind of data is: one `Profile` per data type, the single place that knows it.

A profile holds the facts the rest of the code needs about its data: classes and their colours, intensity range,
display window, default preset, Slicer node classes, output dtype, which folder layouts discovery accepts, which
evaluation applies and which module writes its phantoms. Heavy code (reading, mapping to model space, decoding,
previews, scene nodes) asks the profile (`profile.is_label_map`, `profile.classes`, `profile.hu_range`, ...) and
never compares profile names. A new data type is one more `Profile` in `PROFILES` plus, if its files need one,
its reader.

Light on purpose (standard library only): the Slicer module imports it at start-up without torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from CTDiffusionLib.errors import InputError

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LabelClass:
    """One class of a label map: its voxel value, name (Slicer segment name), colour and accepted other names."""

    value: int
    name: str
    color: RGB  # red, green, blue in 0..1; the same in engine figures, previews and Slicer segments
    aliases: tuple[str, ...] = ()

    @property
    def hex_color(self) -> str:
        return "#" + "".join(f"{round(c * 255):02x}" for c in self.color)


@dataclass(frozen=True)
class DisplayWindow:
    """A grey-value window in HU as Slicer stores it (level = centre, width = span)."""

    name: str
    level: float
    width: float

    @property
    def lower(self) -> float:
        return self.level - self.width / 2.0

    @property
    def upper(self) -> float:
        return self.level + self.width / 2.0

    @property
    def range(self) -> tuple[float, float]:
        return (self.lower, self.upper)


@dataclass(frozen=True)
class Profile:
    """Everything the code needs to know about one data type. See the module docstring."""

    name: str  # command-line value and key in config.json / model.json, e.g. "prostate-ct"
    label: str  # for people, e.g. in the Slicer profile combo box
    # What a voxel is. A label map has classes (value 0 first: background) and becomes one channel per class;
    # an intensity image has a HU range that maps invertibly onto [-1, 1]: linearly, or piecewise linearly through
    # `hu_knots` (HU -> model value pairs) so that the tissues people look at get more of the model's range.
    classes: tuple[LabelClass, ...] = ()
    hu_range: tuple[float, float] | None = None
    hu_knots: tuple[tuple[float, float], ...] = ()
    # How people look at it: the grey window of intensity images (label maps use the class colours).
    display_window: DisplayWindow | None = None
    # The wider window in which images are compared structurally (MS-SSIM): air to dense bone, not only soft tissue.
    comparison_window: DisplayWindow | None = None
    default_preset: str = "default"
    output_dtype: str = "int16"  # numpy dtype name of generated volumes
    slicer_node_class: str = "vtkMRMLScalarVolumeNode"  # node a generated volume becomes in Slicer
    slicer_source_node_classes: tuple[str, ...] = ("vtkMRMLScalarVolumeNode",)  # nodes accepted as training data
    # Discovery: folder layouts accepted besides plain image files and .txt lists ("dicom": DICOM series trees,
    # "acdc": ACDC patientXXX/ folders with Info.cfg).
    folder_layouts: tuple[str, ...] = ()
    condition_keys: tuple[str, ...] = ()  # conditions the data itself provides (ACDC Info.cfg: group, phase)
    evaluation: str = ""  # module holding the profile-specific quality measures, imported only when evaluating
    phantoms: str = ""  # "module:function" that writes a synthetic data set of this profile ("" = none)
    phantom_min_size: tuple[int, int, int] = (16, 16, 1)  # smallest phantom volume (x, y, z) its writer supports

    def __post_init__(self):
        if self.is_label_map == (self.hu_range is not None):
            raise ValueError(f"profile {self.name}: give either classes (a label map) or a hu_range, not both")
        if self.is_label_map and [c.value for c in self.classes] != list(range(len(self.classes))):
            raise ValueError(f"profile {self.name}: class values must be 0, 1, 2, ... in order")
        if self.hu_knots:
            hu, unit = zip(*self.hu_knots)
            if (hu[0], hu[-1]) != tuple(self.hu_range) or (unit[0], unit[-1]) != (-1.0, 1.0) \
                    or any(b <= a for a, b in zip(hu, hu[1:])) or any(b <= a for a, b in zip(unit, unit[1:])):
                raise ValueError(f"profile {self.name}: hu_knots must rise from (hu_range[0], -1) to (hu_range[1], 1)")

    # ------------------------------------------------------------------ what a voxel is
    @property
    def is_label_map(self) -> bool:
        """True for masks (labels, one channel per class, never interpolated), False for intensity images."""
        return bool(self.classes)

    @property
    def channels(self) -> int:
        """Channels in model space: one per class for label maps, one for intensity images."""
        return len(self.classes) if self.is_label_map else 1

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def foreground_classes(self) -> tuple[LabelClass, ...]:
        """The classes without background (label 0): the segments a Slicer segmentation shows."""
        return self.classes[1:]

    @property
    def fill_value(self) -> float:
        """Value outside the image when resampling: air for intensity images, background for label maps."""
        return 0.0 if self.is_label_map else float(self.hu_range[0])

    def label_colors(self) -> list[RGB]:
        """RGB (0..1) per label value, background included: index the list with a label value."""
        return [c.color for c in self.classes]

    def label_for_name(self, name: str) -> int | None:
        """Label value of a segment called `name` (class name or an alias, any case); None if unknown."""
        key = name.strip().lower()
        for c in self.classes:
            if key == c.name.lower() or key in c.aliases:
                return c.value
        return None

    def intensity_config(self) -> dict:
        """The intensity mapping stored in config.json and model.json (how model space returns to real units)."""
        if self.is_label_map:
            return {"kind": "onehot", "classes": list(self.class_names)}
        if self.hu_knots:
            return {"kind": "hu_piecewise", "hu": [float(h) for h, _ in self.hu_knots],
                    "unit": [float(u) for _, u in self.hu_knots]}
        return {"kind": "hu_linear", "hu_range": [float(v) for v in self.hu_range]}

    # ------------------------------------------------------------------ lazily resolved helpers
    def phantom_writer(self):
        """The function writing a phantom data set: writer(folder, num, seed, size_xyz). InputError if none."""
        if not self.phantoms:
            raise InputError(f"There is no phantom generator for profile {self.name}.",
                             f"Phantoms exist for: {', '.join(p.name for p in PROFILES.values() if p.phantoms)}.")
        return resolve(self.phantoms)

    def evaluation_module(self):
        """The module with this profile's quality measures (imported on first use: it needs torch/scipy)."""
        return importlib.import_module(self.evaluation)


def resolve(spec: str):
    """'package.module:attribute' -> the attribute, importing the module only now."""
    module, _, attribute = spec.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attribute) if attribute else obj


PROSTATE_CT = Profile(
    name="prostate-ct",
    label="Prostate CT",
    hu_range=(-1024.0, 2000.0),  # air .. dense cortical bone; everything in it maps invertibly to [-1, 1]
    # Soft tissue (-200 .. 300 HU: fat, muscle, bladder, prostate, rectal wall) gets 60 % of the model's range, so
    # fat/muscle contrast is 3.6x larger in model units than with a linear map; marrow and partial-volume bone
    # (300 .. 1200 HU) get 25 %, air 10 % and dense cortex 5 %. With bone squeezed into 20 % (the former map) a model
    # error of 0.04 units was ~170 HU in bone and pushed bone voxels under 300 HU (measured effects on the demo:
    # docs/engine.md "Intensities"). Runs store the mapping they used.
    hu_knots=((-1024.0, -1.0), (-200.0, -0.8), (300.0, 0.4), (1200.0, 0.9), (2000.0, 1.0)),
    display_window=DisplayWindow("soft tissue", level=40.0, width=400.0),  # -160 .. 240 HU
    comparison_window=DisplayWindow("air to bone", level=0.0, width=2000.0),  # -1000 .. 1000 HU
    default_preset="default",
    output_dtype="int16",
    slicer_node_class="vtkMRMLScalarVolumeNode",
    slicer_source_node_classes=("vtkMRMLScalarVolumeNode",),
    folder_layouts=("dicom",),
    evaluation="CTDiffusionLib.evaluation.ct_realism",
    phantoms="CTDiffusionLib.data.phantoms.prostate_ct:write_prostate_ct_dataset",
    phantom_min_size=(16, 16, 1),
)

CARDIAC_MASKS = Profile(
    name="cardiac-masks",
    label="Cardiac masks (ACDC)",
    classes=(
        LabelClass(0, "background", (0.0, 0.0, 0.0)),
        LabelClass(1, "RV", (0.27, 0.51, 0.93),
                   ("rv", "right ventricle", "rightventricle", "right ventricular cavity")),
        LabelClass(2, "MYO", (0.36, 0.80, 0.35),
                   ("myo", "myocardium", "lv myocardium", "left ventricular myocardium")),
        LabelClass(3, "LV", (0.93, 0.30, 0.27),
                   ("lv", "left ventricle", "leftventricle", "left ventricular cavity")),
    ),
    default_preset="slice2d",
    output_dtype="uint8",
    slicer_node_class="vtkMRMLSegmentationNode",
    slicer_source_node_classes=("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"),
    folder_layouts=("acdc",),
    condition_keys=("group", "phase"),
    evaluation="CTDiffusionLib.evaluation.masks",
    phantoms="CTDiffusionLib.data.phantoms.cardiac_masks:write_cardiac_dataset",
    phantom_min_size=(16, 16, 2),
)

#: name -> Profile, in the order user interfaces list them.
PROFILES: dict[str, Profile] = {p.name: p for p in (PROSTATE_CT, CARDIAC_MASKS)}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def get_profile(profile: str | Profile) -> Profile:
    """The Profile called `profile` (a Profile passes through); InputError listing the valid names otherwise."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise InputError(f"Unknown profile {profile!r}.", f"Use one of: {', '.join(PROFILES)}.") from None
