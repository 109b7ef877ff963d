-- Each Service's labels (a JSON object), which advertisements' serviceSelectors match.

ALTER TABLE service_endpoints ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
