"""Changing a live process safely: the transition (when is it safe), the in-process records,
the image, the trampolines, the seccomp check, and the transaction that undoes them."""
