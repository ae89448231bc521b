"""Importers: agents from LangGraph graphs, models from Hugging Face configs."""
