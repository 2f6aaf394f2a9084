"""Built-in expert banks."""

from vantage_core.api import hookimpl


@hookimpl
def register_experts(register):
    from vantage_plugins.experts.banks import GeluExperts, SharedSwiGLUExperts, SwiGLUExperts

    register("swiglu", SwiGLUExperts)
    register("gelu", GeluExperts)
    register("shared_swiglu", SharedSwiGLUExperts)
