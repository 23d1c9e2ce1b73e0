"""Image inputs of edits and variations: read (multipart file, data: URL, http(s) URL when
allowed), checked (size, format, pixel dimensions before decoding) and converted to what a
pipeline takes. Every refusal is a SleepwellError naming the parameter (docs/edits.md)."""
