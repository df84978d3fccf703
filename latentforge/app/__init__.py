"""The interactive app: `latentforge serve RUN` samples a trained run from a local web page.

`sampler` holds the run and checks requests (no web framework); `server` builds the Gradio page
around it and serves it on 127.0.0.1. Gradio is imported only when a page is built, so the rest of
the library works without it (`pip install latentforge[app]`).
"""

from latentforge.app.sampler import RequestError, RunSampler, SampleRequest, SampleResult
from latentforge.app.server import Served, build_app, launch, serve

__all__ = ["RequestError", "RunSampler", "SampleRequest", "SampleResult", "Served", "build_app", "launch", "serve"]
