"""bwmon-client (clients/python): the emitter, the ASGI middleware, the distribution."""
