"""The application layer: the `vinbig` command line, `vinbig demo` and `vinbig export` (Kaggle).

It drives the stage packages (`folds`, `detector`, `classifier`, `fusion`), which import only the
foundation (the rest of `vinbig`); nothing below this layer imports it.
"""
