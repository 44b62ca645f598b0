# test scaffolding: SGLang's parallel state without its model stack (see tools/sglang_offline/NOTES.md)
try:
    import sglang_parallel_shim
    sglang_parallel_shim.install_standins()
except Exception as error:  # pragma: no cover
    import sys
    print(f"sitecustomize: {error}", file=sys.stderr)
