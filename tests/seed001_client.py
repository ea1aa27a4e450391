"""The Python client of the video-SALMONN 2 RunPod guide (../shared/seeds/001_…, "Python Client"), copied as
written; only its example call at the bottom is put under ``__main__`` so that importing it runs nothing.
tests/test_seeds_api.py points ENDPOINT_URL at the local API and calls ``process_video``."""

# fmt: off
import requests
import base64
import json

# Your RunPod endpoint URL
ENDPOINT_URL = "https://api.runpod.ai/v2/YOUR_ENDPOINT_ID/runsync"
API_KEY = "YOUR_RUNPOD_API_KEY"

def process_video(video_path, prompt, fps=1.0):
    # Read and encode video
    with open(video_path, "rb") as f:
        video_base64 = base64.b64encode(f.read()).decode('utf-8')
    
    # Prepare request
    payload = {
        "input": {
            "video": video_base64,
            "prompt": prompt,
            "fps": fps,
            "max_frames": 30,
            "temperature": 0.7,
            "process_audio": True
        }
    }
    
    # Send request
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json"
    }
    
    response = requests.post(ENDPOINT_URL, json=payload, headers=headers)
    result = response.json()
    
    if "output" in result:
        print(f"Caption: {result['output']['caption']}")
        print(f"Processed {result['output']['metadata']['num_frames']} frames at {result['output']['metadata']['fps_used']} FPS")
    else:
        print(f"Error: {result.get('error', 'Unknown error')}")
    
    return result

if __name__ == "__main__":
    # Example usage
    result = process_video(
        video_path="sample_video.mp4",
        prompt="What is happening in this video? Describe the actions and any dialogue.",
        fps=2.0  # Extract 2 frames per second
    )
