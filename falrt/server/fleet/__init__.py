"""The runner plane: runners started on a backend, scaled, attached, stopped. It reports
through `fleet.events.FleetEvents` and never imports the queue."""
