"""Access to the MRML scene and the module logics, the same way inside Slicer and on the Qt-free slicer-core.

Inside the Slicer application everything already exists (slicer.mrmlScene, slicer.app.applicationLogic() with
the module logics registered by their modules, a layout manager that creates slice views and their composite
nodes). Outside it -- tests and scripts on slicer-core from PyPI -- `boot_core_application()` builds the same
pieces the application would: a scene, a vtkSlicerApplicationLogic with the Colors, Volumes, Segmentations,
SubjectHierarchy, Sequences, Tables and Plots module logics registered under their Slicer module names, a
layout logic (creates the view nodes a layout needs) and one slice logic per slice view (creates the slice
composite nodes), as a layout manager would.

Imports `slicer` (MRML) only; never qt, ctk, slicer.app (except to detect the application) or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import slicer

_CORE_APP: "CoreApplication | None" = None


@dataclass
class CoreApplication:
    """What the Slicer application provides, rebuilt on slicer-core (tests, headless scripts)."""

    scene: object
    app_logic: object
    layout_logic: object
    logics: dict = field(default_factory=dict)
    slice_logics: dict = field(default_factory=dict)

    def ensure_slice_logics(self) -> None:
        """One slice logic per slice node (creates the slice composite node), like qMRMLSliceWidget does."""
        import vtk

        nodes = self.scene.GetNodesByClass("vtkMRMLSliceNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            name = node.GetLayoutName()
            if name in self.slice_logics:
                continue
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            logic.SetSliceNode(node)
            self.slice_logics[name] = logic
            collection = self.app_logic.GetSliceLogics() or vtk.vtkCollection()
            collection.AddItem(logic)
            self.app_logic.SetSliceLogics(collection)


def in_slicer_application() -> bool:
    return getattr(slicer, "app", None) is not None


def boot_core_application(scene=None, set_global: bool = True) -> CoreApplication:
    """Create (or return) the application pieces on slicer-core; sets slicer.mrmlScene like the application."""
    global _CORE_APP
    import vtk

    if scene is None:
        scene = slicer.vtkMRMLScene()
    if _CORE_APP is not None and _CORE_APP.scene is scene:
        return _CORE_APP
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    colors = app_logic.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    logics = {"Colors": colors}

    def register(name, logic):
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic

    app_logic.SetModuleLogic("Colors", colors)
    register("Volumes", slicer.vtkSlicerVolumesLogic())
    register("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
    register("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
    register("Sequences", slicer.vtkSlicerSequencesLogic())
    register("Tables", slicer.vtkSlicerTablesLogic())
    register("Plots", slicer.vtkSlicerPlotsLogic())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    app = CoreApplication(scene=scene, app_logic=app_logic, layout_logic=layout_logic, logics=logics)
    app.ensure_slice_logics()
    _CORE_APP = app
    if set_global:
        slicer.mrmlScene = scene
    return app


def release_core_application() -> None:
    """Forget the booted core application (tests build a fresh one per scene)."""
    global _CORE_APP
    # (vtkMRMLScene.Clear on slicer-core with these logics attached crashes; dropping the references is enough)
    if _CORE_APP is not None and getattr(slicer, "mrmlScene", None) is _CORE_APP.scene:
        slicer.mrmlScene = None
    if _CORE_APP is not None:
        # the slice logics stop observing first: a scene that outlives them (someone still holds a node) must not
        # call into a slice logic whose application logic is already gone when its colour nodes go away
        for logic in _CORE_APP.slice_logics.values():
            logic.SetMRMLScene(None)
    _CORE_APP = None


def get_scene(scene=None):
    if scene is not None:
        return scene
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        scene = boot_core_application().scene
    return scene


def app_logic():
    if in_slicer_application():
        return slicer.app.applicationLogic()
    if _CORE_APP is None:
        boot_core_application(getattr(slicer, "mrmlScene", None))
    return _CORE_APP.app_logic


def module_logic(name: str):
    """A module logic by its Slicer module name ("Volumes", "Segmentations", "Plots", ...)."""
    logic = app_logic().GetModuleLogic(name)
    if logic is None:
        raise RuntimeError(f"The {name} module logic is not available in this Slicer.")
    return logic


def after_layout_change(scene=None) -> None:
    """Outside the application, create what a layout manager would after a layout switch (composite nodes)."""
    if not in_slicer_application() and _CORE_APP is not None and (scene is None or _CORE_APP.scene is scene):
        _CORE_APP.ensure_slice_logics()


def subject_hierarchy(scene=None):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(get_scene(scene))
