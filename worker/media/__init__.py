"""A job's media: fetched to local disk (sources.py), planned within the model's limits (frame_plan.py), and
decoded in decoder processes (pool.py) by video.py and image.py over probe.py, frames.py and audio.py."""
