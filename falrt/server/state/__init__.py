"""What the fleet and the queue both hold: apps, their queues, work items, runner handles,
and the transition tables of request statuses and runner states. No I/O, no tasks."""
