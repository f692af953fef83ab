"""Pictures of pcgraph graphs and runs (matplotlib + networkx only, no system binaries).

- :func:`draw_compiled`: the compiled graph laid out by depth (one rank per inference step,
  top-down; an unrolled cell drawn once), as PNG/SVG/PDF or a hand-written Graphviz DOT text;
- :func:`wave_data` / :func:`draw_wave`: mean ``|eps|`` per node and step under Z-IL and IL
  (Z-IL's error wave reaches a node exactly at ``t = depth``; IL's smears), and how far IL's
  errors are from BP's deltas at its update;
- :func:`plot_runs`: loss and accuracy curves of run folders; :class:`TensorBoardLogger`.

matplotlib is imported lazily (inside the functions), so importing this package is cheap.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["TensorBoardLogger", "load_run", "plot_runs"], ".curves"),
    "VizError": ".errors",
    **dict.fromkeys(["draw_compiled", "graph_layout", "to_dot"], ".graph"),
    **dict.fromkeys(["draw_wave", "wave_data"], ".wave"),
}, globals())

__all__ = ["TensorBoardLogger", "VizError", "draw_compiled", "draw_wave", "graph_layout", "load_run",
           "plot_runs", "to_dot", "wave_data"]
