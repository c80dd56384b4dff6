"""`bertnli-exp`: the command-line face of bertnli, one module per command group (`main.py` gathers them).

Commands parse options into the library's own types and print its results; the work lives in the
layers below. Every error leaves as one line (`group.Group`)."""
