"""The circuits that ship with mapflow-tl, one named circuit per ``.py`` file.

Installed as the package ``mapflow_tl.builtin_circuits`` (setup.py maps this folder to that name)
and read as files by :mod:`mapflow_tl.circuits`; files whose names start with ``_``, like this one,
are not circuits.
"""
