"""The trame-slicer web app: real (left) and synthetic (right) in two Slicer slice views driven by one slider,
window/level presets, label maps as coloured overlays, sample browsing, the quality report and a live training
panel. Rendering is Slicer's own slice pipeline (slicer-core) offscreen, streamed to the page by trame-rca.

Needs the `web` extra (trame-slicer, slicer-core). Reads only: volumes are loaded into an in-memory MRML
scene, at most `cache_size` per side at a time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from slicer import vtkMRMLColorTableNode
from trame.app import TrameApp
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageLayout
from vtkmodules.util.numpy_support import numpy_to_vtk
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from CTDiffusionLib.data.discovery import Case, read_case
from CTDiffusionLib.errors import CTDiffusionError
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.runfolder import RunFolder
from CTDiffusionLib.web.report import (TrainingFollower, latest_preview_png, metric_headers, metric_rows,
                                       read_metrics, utility_panel, verdict_line)
from CTDiffusionLib.web.sources import ViewerInputs, Volume
from CTDiffusionLib.web.volume_cache import VolumeCache

log = logging.getLogger("ctdiffusion.view")

REAL, SYNTHETIC = "Real", "Synthetic"
ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
#: Slicer's standard CT window/level presets (Volumes module), plus the profile's own windows first.
CT_PRESETS = {"abdomen": (350.0, 40.0), "bone": (1000.0, 400.0), "brain": (100.0, 50.0), "lung": (1400.0, -500.0)}
POLL_SECONDS = 2.0


# ------------------------------------------------------------------------------------- volumes into MRML
def _lps_to_ras_matrix(image: sitk.Image) -> vtkMatrix4x4:
    """IJK-to-RAS directions: SimpleITK directions are LPS, Slicer's world is RAS (flip x and y)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ras = np.diag([-1.0, -1.0, 1.0]) @ direction
    matrix = vtkMatrix4x4()
    for i in range(3):
        for j in range(3):
            matrix.SetElement(i, j, ras[i, j])
    return matrix


def add_volume_node(scene, image: sitk.Image, name: str, color_node=None):
    """A scalar (or, with `color_node`, label map) volume node holding `image` with its physical geometry."""
    array = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))  # z, y, x
    data = vtkImageData()
    data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    data.GetPointData().SetScalars(numpy_to_vtk(array.ravel(), deep=True))
    cls = "vtkMRMLLabelMapVolumeNode" if color_node is not None else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    node.SetSpacing(image.GetSpacing())
    ox, oy, oz = image.GetOrigin()
    node.SetOrigin(-ox, -oy, oz)
    node.SetIJKToRASDirectionMatrix(_lps_to_ras_matrix(image))
    node.SetAndObserveImageData(data)
    node.CreateDefaultDisplayNodes()
    if color_node is not None:
        node.GetDisplayNode().SetAndObserveColorNodeID(color_node.GetID())
    return node


def label_color_node(scene, profile):
    """A colour table with the profile's class colours (background transparent), for label-map overlays."""
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{profile.name} classes")
    node.SetTypeToUser()
    node.SetNumberOfColors(max(c.value for c in profile.classes) + 1)
    node.SetNamesInitialised(True)
    for c in profile.classes:
        alpha = 0.0 if c.value == 0 else 1.0
        node.SetColor(c.value, c.name, *c.color, alpha)
    return node


# ------------------------------------------------------------------------------------------------ the app
class ViewerApp(TrameApp):
    def __init__(self, inputs: ViewerInputs, server=None, cache_size: int = 3, rca_encoder: str = "jpeg"):
        super().__init__(server=server)
        self.inputs = inputs
        self.profile = get_profile(inputs.profile)
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.colors = label_color_node(self.scene, self.profile) if self.profile.is_label_map else None

        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=lambda *_: None,
                               rca_encoder=rca_encoder)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout("compare", Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.slice_view("Axial", label=REAL, color="#F34A33"),
            ViewLayoutDefinition.slice_view("Axial", label=SYNTHETIC, color="#EDD54C"),
        ]))
        self.layout_manager.set_layout("compare")
        self.views = {tag: self.slicer_app.view_manager.get_view(tag) for tag in (REAL, SYNTHETIC)}

        self.lists = {REAL: inputs.real_volumes(), SYNTHETIC: inputs.generated_volumes()}
        self.caches = {tag: VolumeCache(self._load, self.scene.RemoveNode, capacity=cache_size)
                       for tag in (REAL, SYNTHETIC)}
        self.shown = {REAL: None, SYNTHETIC: None}
        self.follower = TrainingFollower(inputs.events_path)
        self._metrics_stamp = None
        self._utility_stamp = None

        self.presets = self._window_presets()
        self._init_state()
        self._build_ui()
        self.server.controller.on_server_ready.add(self._on_ready)

    # -------------------------------------------------------------------------------------------- data
    def _window_presets(self) -> dict[str, tuple[float, float]]:
        if self.profile.is_label_map:
            return {}
        presets = {}
        for window in (self.profile.display_window, self.profile.comparison_window):
            if window is not None:
                presets[window.name] = (window.width, window.level)
        return {**presets, **CT_PRESETS}

    def _load(self, volume: Volume):
        image = read_case(Case(volume.name, volume.path, volume.series_uid), self.profile.name)
        return add_volume_node(self.scene, image, volume.name, self.colors)

    def _show(self, tag: str) -> None:
        volumes = self.lists[tag]
        index = self.state[f"{tag}_index"]
        composite = self._logic(tag).GetSliceCompositeNode()
        self.shown[tag] = None
        composite.SetBackgroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        if not volumes:
            return
        index = min(max(int(index), 0), len(volumes) - 1)
        try:
            node = self.caches[tag].get(volumes[index])
        except CTDiffusionError as exc:  # a damaged file: say so on the page (empty view), keep browsing
            self.state[f"{tag}_name"] = f"{volumes[index].name}: {exc.message}"
            return
        self.shown[tag] = volumes[index]
        if self.profile.is_label_map:  # label map over an empty background: coloured classes on black
            composite.SetBackgroundVolumeID(None)
            composite.SetLabelVolumeID(node.GetID())
            composite.SetLabelOpacity(1.0)
        else:
            composite.SetBackgroundVolumeID(node.GetID())
            self._apply_window(node)
        self.state[f"{tag}_name"] = f"{volumes[index].name} ({index + 1} of {len(volumes)})"

    def _logic(self, tag: str):
        return self.slicer_app.app_logic.GetSliceLogic(self.views[tag].get_view_node())

    def _apply_window(self, node) -> None:
        window, level = self.presets.get(self.state.preset, (None, None))
        display = node.GetDisplayNode()
        if window is None or display is None:
            return
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(window, level)

    def _shown_node(self, tag: str):
        volume = self.shown[tag]
        return self.caches[tag].get(volume) if volume is not None else None

    # --------------------------------------------------------------------------------------- geometry
    def _on_orientation(self) -> None:
        self._fit_and_count()
        self.state.slice_index = self.state.slice_count // 2  # a new direction starts in the middle

    def _fit_and_count(self) -> None:
        """Orient both views, fit them to their volume and set the slider range to the larger slice count."""
        counts = []
        for tag, view in self.views.items():
            view.set_orientation(self.state.orientation)
            node = self._shown_node(tag)
            logic = self._logic(tag)
            if node is not None:
                logic.FitSliceToVolume(node, *view.render_window().GetSize())
                logic.SnapSliceOffsetToIJK()
            counts.append(self._slice_count(tag))
        self.state.slice_count = max(counts)
        self.state.slice_index = min(self.state.slice_index, self.state.slice_count - 1)
        self._apply_slice()

    def _slice_range(self, tag: str):
        view = self.views[tag]
        (low, high), step = view.get_slice_range(), view.get_slice_step()
        return low, high, step

    def _slice_count(self, tag: str) -> int:
        if self.shown[tag] is None:
            return 1
        low, high, step = self._slice_range(tag)
        return max(1, int(round((high - low) / step)) + 1) if step > 0 else 1

    def _apply_slice(self) -> None:
        """Both views to the same relative position: slice `slice_index` of the view with the most slices, the
        corresponding slice in the other (the same slice when both volumes have the same grid, as generated
        volumes do)."""
        fraction = self.state.slice_index / max(self.state.slice_count - 1, 1)
        for tag, view in self.views.items():
            if self.shown[tag] is None:
                continue
            low, high, step = self._slice_range(tag)
            view.set_slice_value(min(low + round(fraction * (self._slice_count(tag) - 1)) * step, high))
            view.schedule_render()

    # -------------------------------------------------------------------------------------------- state
    def _init_state(self) -> None:
        s = self.state
        s.orientation = "Axial"
        s.orientations = list(ORIENTATIONS)
        s.preset = next(iter(self.presets), None)
        s.preset_names = list(self.presets)
        s.slice_index, s.slice_count = 0, 1
        s.profile_label = self.profile.label
        for tag in (REAL, SYNTHETIC):
            s[f"{tag}_index"] = 0
            s[f"{tag}_name"] = "no volumes: pass --real" if tag == REAL and not self.lists[tag] else "no volumes"
            s[f"{tag}_total"] = len(self.lists[tag])
        s.verdict, s.metric_rows, s.metric_headers = "", [], []
        self._set_utility(utility_panel({}))
        s.loss_png, s.preview_png, s.training_status = "", "", ""
        s.is_run = self.inputs.run_dir is not None

        for tag in (REAL, SYNTHETIC):
            s.change(f"{tag}_index")(lambda tag=tag, **_: self._on_index(tag))
        s.change("orientation")(lambda **_: self._on_orientation())
        s.change("slice_index")(lambda **_: self._apply_slice())
        s.change("preset")(lambda **_: self._on_preset())

    def _on_index(self, tag: str) -> None:
        self._show(tag)
        self._fit_and_count()

    def _on_preset(self) -> None:
        for tag in (REAL, SYNTHETIC):
            node = self._shown_node(tag)
            if node is not None:
                self._apply_window(node)
                self.views[tag].schedule_render()

    def step_sample(self, tag: str, delta: int) -> None:
        total = len(self.lists[tag])
        if total:
            self.state[f"{tag}_index"] = (self.state[f"{tag}_index"] + delta) % total

    def refresh(self) -> None:
        """Pick up what a running training or evaluation added since the last call (never writes)."""
        s = self.state
        if self.follower.poll():
            s.loss_png = self.follower.loss_curve_png()
            s.training_status = self.follower.status
        if self.inputs.run_dir is not None:
            s.preview_png = latest_preview_png(RunFolder(self.inputs.run_dir).samples)
        generated = self.inputs.generated_volumes()
        if generated != self.lists[SYNTHETIC]:
            grew_from_empty = not self.lists[SYNTHETIC]
            self.lists[SYNTHETIC] = generated
            s[f"{SYNTHETIC}_total"] = len(generated)
            if grew_from_empty or s[f"{SYNTHETIC}_index"] >= len(generated) - 2:  # following the newest
                s[f"{SYNTHETIC}_index"] = len(generated) - 1
                self._on_index(SYNTHETIC)
        path = self.inputs.metrics_path
        stamp = path.stat().st_mtime_ns if path is not None and path.is_file() else None
        if stamp != self._metrics_stamp:
            self._metrics_stamp = stamp
            metrics = read_metrics(path)
            s.verdict, s.metric_rows = verdict_line(metrics), metric_rows(metrics)
            s.metric_headers = metric_headers(s.metric_rows)
        utility = self.inputs.utility_path  # a benchmark may finish, or be linked into the report, later
        utility_stamp = (stamp, utility, utility.stat().st_mtime_ns if utility is not None else None)
        if utility_stamp != self._utility_stamp:
            self._utility_stamp = utility_stamp
            self._set_utility(utility_panel(read_metrics(path), utility))

    def _set_utility(self, panel: dict) -> None:
        s = self.state
        s.utility_verdict, s.utility_gain = panel["verdict"], panel["gain"]
        s.utility_headers, s.utility_rows = panel["headers"], panel["rows"]

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                with self.state:
                    self.refresh()
            except Exception:  # a half-written file must not stop the viewer; try again next round
                log.exception("refresh failed")

    def _on_ready(self, **_) -> None:
        with self.state:
            for tag in (REAL, SYNTHETIC):
                self._show(tag)
            self._on_orientation()
            self.refresh()
        asyncio.get_event_loop().create_task(self._poll_forever())

    # ----------------------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        with SinglePageLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text("CTDiffusion viewer")
            self.ui.icon.hide()  # no navigation drawer
            with self.ui.toolbar:
                v3.VSpacer()
                html.Span("{{ profile_label }}", classes="text-caption mr-4")
            with self.ui.content:
                client.Style("html { overflow-y: auto; }")
                with html.Div(style="display: flex; height: calc(100vh - 64px);"):
                    with html.Div(style="flex: 1; display: flex; flex-direction: column; min-width: 0;"):
                        self._controls()
                        with html.Div(style="display: flex; gap: 4px; padding: 0 8px;"):
                            for tag in (REAL, SYNTHETIC):
                                self._sample_browser(tag)
                        with html.Div(id="views", style="flex: 1; min-height: 0;"):
                            self.layout_manager.initialize_layout_grid(self.ui)
                    self._side_panel()

    def _controls(self) -> None:
        with html.Div(style="display: flex; align-items: center; gap: 12px; padding: 4px 8px;"):
            with v3.VBtnToggle(v_model=("orientation",), mandatory=True, density="compact", id="orientation"):
                for name in ORIENTATIONS:
                    v3.VBtn(name, value=name, size="small")
            v3.VSelect(v_model=("preset",), items=("preset_names",), label="Window", density="compact",
                       hide_details=True, style="max-width: 180px;", v_if="preset_names.length", id="preset")
            v3.VSlider(v_model=("slice_index",), min=0, max=("slice_count - 1",), step=1, hide_details=True,
                       density="compact", id="slice-slider", label="Slice", thumb_label=True)
            html.Span("{{ slice_index + 1 }} / {{ slice_count }}", id="slice-text", classes="text-body-2")

    def _sample_browser(self, tag: str) -> None:
        with html.Div(style="flex: 1; display: flex; align-items: center; gap: 4px;"):
            html.B(f"{tag}:", classes="text-body-2")
            v3.VBtn(icon="mdi-chevron-left", size="x-small", variant="text", id=f"{tag.lower()}-previous",
                    click=lambda tag=tag: self.step_sample(tag, -1), disabled=(f"{tag}_total < 2",))
            v3.VBtn(icon="mdi-chevron-right", size="x-small", variant="text", id=f"{tag.lower()}-next",
                    click=lambda tag=tag: self.step_sample(tag, 1), disabled=(f"{tag}_total < 2",))
            html.Span(f"{{{{ {tag}_name }}}}", id=f"{tag.lower()}-name", classes="text-body-2")

    def _side_panel(self) -> None:
        with html.Div(style="width: 560px; overflow-y: auto; padding: 8px; border-left: 1px solid #ccc;",
                      id="side-panel"):
            html.Div("Quality report", classes="text-subtitle-1")
            html.Div("{{ verdict || 'No report (metrics.json) found.' }}", id="verdict", classes="text-body-2 mb-2")
            with v3.VDataTable(headers=("metric_headers",), items=("metric_rows",), density="compact",
                               items_per_page=-1, hide_default_footer=True, v_if="metric_rows.length", id="metrics",
                               style="font-size: 12px;"):
                with v3.Template(raw_attrs=['v-slot:item.verdict="{ item }"']):  # the verdict, coloured
                    html.B("{{ item.verdict_label }}",
                           style=("item.verdict === 'fail' ? 'color: #c62828' : 'color: #2e7d32'",))
            with html.Div(v_if="utility_rows.length", id="utility"):  # `ctdiffusion utility`: the arms
                html.Div("Downstream utility (real / synthetic / real + synthetic)", classes="text-subtitle-1 mt-4")
                html.Div("{{ utility_verdict }}", id="utility-verdict", classes="text-body-2 mb-2")
                v3.VDataTable(headers=("utility_headers",), items=("utility_rows",), density="compact",
                              items_per_page=-1, hide_default_footer=True, id="utility-table",
                              style="font-size: 12px;")
                html.Div("{{ utility_gain }}", id="utility-gain", classes="text-body-2 mt-1")
            with html.Div(v_if="is_run", id="training"):
                html.Div("Training", classes="text-subtitle-1 mt-4")
                html.Div("{{ training_status || 'no progress events yet' }}", classes="text-body-2",
                         id="training-status")
                html.Img(src=("loss_png",), v_if="loss_png", style="width: 100%;", id="loss-curve")
                html.Div("Latest preview sample", classes="text-body-2 mt-2", v_if="preview_png")
                html.Img(src=("preview_png",), v_if="preview_png", style="width: 60%; image-rendering: pixelated;",
                         id="preview")


def serve(inputs: ViewerInputs, host: str = "127.0.0.1", port: int = 8080, cache_size: int = 3,
          on_ready=None) -> None:
    """Start the viewer and block until the server stops."""
    app = ViewerApp(inputs, cache_size=cache_size)
    if on_ready is not None:
        app.server.controller.on_server_ready.add(on_ready)
    app.server.start(host=host, port=port, open_browser=False, show_connection_info=False)
