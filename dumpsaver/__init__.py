"""dumpsaver: save an in-memory kernel crash dump early in the next boot.

The data path, one module per stage:
locate (where is the dump?) -> physmem (read only inside it) -> format (decode)
-> writers (ELF / kdump-compressed) -> save (durability, release) -> restart.
The panic side (simulate) shares the format module with the saver.
"""

__version__ = "0.1.0"
