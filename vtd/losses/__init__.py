"""Losses shared by the methods: ranking and distillation."""
