"""One caption job end to end: the service (service.py) runs each item as a video (video.py) or image
(image.py), asks the engine (generate.py) and builds the result (result.py, summary.py)."""
