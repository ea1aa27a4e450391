"""Bulk captioning (`python -m worker.bulk`): a JSONL manifest captioned into a resumable JSONL output, on
local engine processes or through a RunPod endpoint."""
