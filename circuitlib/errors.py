"""User-facing errors: a bad input named with what is wrong, shown as one line by the CLIs."""


class InputError(ValueError):
    """An input (file, model, dataset, option) that cannot be used; the message names it."""
