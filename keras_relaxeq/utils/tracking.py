"""Keras attribute tracking."""


def set_untracked(layer, name: str, value) -> None:
    """Set ``layer.<name> = value`` without Keras' container tracking.

    Keras wraps lists, tuples and dicts assigned to a layer in tracking containers, which would rebuild
    ``Irreps`` tuples (and other tuple subclasses) as plain lists; plain ``object.__setattr__`` keeps the
    value as it is.
    """
    object.__setattr__(layer, name, value)
