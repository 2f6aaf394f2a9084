"""Built-in routers."""

from vantage_core.api import hookimpl


@hookimpl
def register_routers(register):
    from vantage_plugins.routers.gates import AuxFreeRouter, SwitchRouter, TopKRouter

    register("topk", TopKRouter)
    register("switch", SwitchRouter)
    register("aux_free", AuxFreeRouter)
