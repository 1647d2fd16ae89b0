"""Production: export a trained run to a pickle-free artifact, score raw records, serve them over HTTP.

``ctrlab export RUN`` -> :func:`ctrlab.serve.artifact.export_run`; ``ctrlab serve ARTIFACT`` ->
:func:`ctrlab.serve.server.serve`; in Python, :class:`ctrlab.serve.predictor.Predictor` scores
raw records or frames directly. The submodules import their heavy dependencies (ONNX Runtime,
FastAPI) only when used.
"""
