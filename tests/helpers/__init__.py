"""Fakes and builders shared by several test folders."""
