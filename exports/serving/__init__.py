"""The serving side of a bundle: NumPy + onnxruntime only, never torch (a test runs it with torch blocked).

`runtime.Retriever` loads a bundle and searches it; `manifest` checks a bundle's format and file hashes;
`gallery` holds the indexed items; `search` is the exact top-k index.
"""
