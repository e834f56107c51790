"""The ECS executor: a backup or restore run as a Fargate task, followed live and reported."""
