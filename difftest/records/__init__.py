"""Result directories: their one layout, writer and checked readers (store), tallies and findings
(results), the directory lock, the expected findings a run is judged with, and a fingerprint's
claims in words (claims)."""
