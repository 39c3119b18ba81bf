"""User-facing errors: a bad input named with what is wrong, shown as one line by the CLIs."""


class InputError(ValueError):
    """An input (file, model, dataset, option) that cannot be used; the message names it."""


class CorruptCheckpoint(InputError):
    """A checkpoint file that cannot be read back; `path` names it, so a caller may discard the checkpoint."""

    def __init__(self, path: object, problem: str):
        super().__init__(f"checkpoint {path}: cannot be read ({problem}); delete its folder to start over")
        self.path = path
