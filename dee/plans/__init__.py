"""Plans: model, builder, document form, validation, conditions, content and the registry."""
