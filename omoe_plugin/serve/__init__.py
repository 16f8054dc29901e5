"""`omoe-serve`: an HTTP server (the Open Inference Protocol, KServe v2, and a plain JSON form)
for the classifiers, taggers and readers written by omoe-export, with dynamic micro-batching
on ONNX Runtime, a bounded queue, Prometheus metrics and graceful shutdown. Like
`omoe_plugin.export.inference`, it imports neither torch nor fairseq."""
