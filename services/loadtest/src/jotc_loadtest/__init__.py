"""JOTC load test: Locust scenarios that check every answer, and gates on service objectives."""
