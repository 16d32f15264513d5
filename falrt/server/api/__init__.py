"""The edges: the gRPC servicers (Queue, Control, RunnerLink), who may call them, and the
conversions between messages and the planes' plain records."""
