import os

# onnxruntime (under nudenet and insightface) sends usage events to Microsoft's collector
# (mobile.events.data.microsoft.com) unless this is set before it is first imported; a build sends
# nothing out but its downloads, which the address guard sees
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
