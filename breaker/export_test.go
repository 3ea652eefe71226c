package breaker

// Defaults, exported for the external tests only.
const (
	DefaultBucketPeriod = defaultBucketPeriod
	DefaultInterval     = defaultInterval
	DefaultMaxKeys      = defaultMaxKeys
)
