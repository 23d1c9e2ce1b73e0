"""Outbound network checks shared by the layers that fetch or post URLs (webhooks, image URLs)."""
