"""Render the comparison's slice views headless, the way Slicer draws them, on slicer-core (no Slicer application):
each view's vtkMRMLSliceLogic blends its background/foreground/label layers into an RGBA image, and Slicer's own
2D segmentation displayable manager (vtkMRMLSegmentationsDisplayableManager2D) draws segmentations on top in an
offscreen render window; the view label ("Real" / "Synthetic") is written in the view's colour in the corner,
where Slicer's slice controller shows it. Used for the catalog screenshot, the user guide's picture and the test
that the comparison shows what it should.

Offscreen rendering without an X server: set VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow (Mesa's EGL works
without a GPU). Usage: python -m CTDiffusionLib.scene.render --help
"""

from __future__ import annotations

from pathlib import Path

import slicer

from CTDiffusionLib.scene import core
from CTDiffusionLib.scene.comparison import REAL_VIEW, SYNTHETIC_VIEW, slice_node

VIEW_COLORS = {REAL_VIEW: (0xF3, 0x4A, 0x33), SYNTHETIC_VIEW: (0xED, 0xD5, 0x4C)}  # Slicer's red / yellow views
_SLICE_DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D",)


def render_slice_view(layout_name: str, size: int = 384, scene=None, label: bool = True):
    """One slice view as an RGB uint8 array (size x size x 3), rows top to bottom."""
    import numpy as np
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    scene = core.get_scene(scene)
    app = core.boot_core_application(scene, set_global=False)
    node = slice_node(scene, layout_name)
    app.ensure_slice_logics()
    logic = app.slice_logics[layout_name]
    dims = node.GetDimensions()
    if (dims[0], dims[1]) != (size, size):
        fov = node.GetFieldOfView()
        node.SetDimensions(size, size, 1)
        side = max(fov[0], fov[1])
        node.SetFieldOfView(side, side, fov[2])
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0, 0, 0)
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # displayable managers observe an interactor, as in a view
    interactor.SetRenderWindow(window)
    mapper = vtk.vtkImageMapper()  # the blended layers, as qMRMLSliceView shows them
    mapper.SetInputConnection(logic.GetImageDataConnection())
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    image = vtk.vtkActor2D()
    image.SetMapper(mapper)
    renderer.AddViewProp(image)
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app.app_logic)
    for name in _SLICE_DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(node)
    if label:
        text = vtk.vtkTextActor()
        text.SetInput(node.GetLayoutLabel() or layout_name)
        prop = text.GetTextProperty()
        prop.SetFontSize(max(12, size // 20))
        prop.SetBold(1)
        prop.SetColor(*(c / 255.0 for c in VIEW_COLORS.get(layout_name, (255, 255, 255))))
        text.SetDisplayPosition(8, size - 8 - prop.GetFontSize())
        renderer.AddViewProp(text)
    group.RequestRender()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.SetInputBufferTypeToRGB()
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    pixels = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    group.SetMRMLDisplayableNode(None)
    window.Finalize()
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def render_comparison(path: str | Path | None = None, size: int = 384, scene=None, gap: int = 4):
    """The two comparison views side by side (real left, synthetic right) as an RGB array; written as PNG when
    `path` is given."""
    import numpy as np

    left = render_slice_view(REAL_VIEW, size, scene)
    right = render_slice_view(SYNTHETIC_VIEW, size, scene)
    picture = np.concatenate([left, np.full((size, gap, 3), 40, np.uint8), right], axis=1)
    if path is not None:
        write_png(picture, path)
    return picture


def write_png(rgb, path: str | Path) -> Path:
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    h, w, _ = rgb.shape
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(rgb[::-1].reshape(-1, 3).copy(), deep=True,
                                                 array_type=vtk.VTK_UNSIGNED_CHAR))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    return Path(path)


def read_png(path: str | Path):
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]


def _main(argv=None) -> int:
    """Build the comparison from generated output with the module's own scene code and render it."""
    import argparse

    from CTDiffusionLib.profiles import PROFILE_NAMES, get_profile
    from CTDiffusionLib.scene import comparison, nodes

    parser = argparse.ArgumentParser(prog="python -m CTDiffusionLib.scene.render", description=__doc__.split("\n")[0])
    parser.add_argument("--real", required=True, help="a real volume (CT) or label volume (masks)")
    parser.add_argument("--generated", required=True, help="a `generate` output folder")
    parser.add_argument("--profile", choices=PROFILE_NAMES, required=True)
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--below", help="a PNG of the same width to put above this rendering (one picture)")
    args = parser.parse_args(argv)
    scene = slicer.vtkMRMLScene()
    core.boot_core_application(scene)
    try:
        profile = get_profile(args.profile)
        if profile.is_label_map:
            real = nodes.load_mask_segmentation(args.real, name="real", scene=scene, profile=profile)
        else:
            real = nodes.load_ct_volume(args.real, name="real", scene=scene, profile=profile)
        synthetic = nodes.import_generated(args.generated, scene=scene, beside=real, profile=args.profile)
        comparison.setup_comparison(real, synthetic[0], scene=scene)
        picture = render_comparison(None, args.size, scene)
        if args.below:
            import numpy as np

            above = read_png(args.below)
            picture = np.concatenate([above, np.full((4, picture.shape[1], 3), 40, np.uint8), picture], axis=0)
        write_png(picture, args.out)
    finally:
        core.release_core_application()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
