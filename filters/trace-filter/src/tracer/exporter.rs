//! The root side of the trace filter: its configuration, the spool of finished spans and their
//! export in batches from the root context's tick.

// One module in three files: the parent's names (its imports, the host traits, the shared state) are this file's.
use super::*;

/// The root side: configuration, the spool and its export.
#[derive(Default)]
pub struct Exporter {
    shared: Option<Rc<RefCell<Shared>>>,
    /// The batch being exported: the token of its callout and its items, kept to go back into
    /// the spool if the collector asks for a retry.
    in_flight: Option<(u32, Vec<Vec<u8>>)>,
    /// When this VM last sent a batch.
    last_flush: Option<SystemTime>,
    /// When this VM last looked into a spool its count said was empty (the count lags behind
    /// the other workers by a tick, and can be off after a VM died).
    last_probe: Option<SystemTime>,
    /// When a "queue ready" from the host last made this VM look at the spool.
    last_ready: Option<SystemTime>,
    /// The last drain found the queue empty.
    drained: bool,
    /// Shutting down: how many more spans this VM drains before it reports done. Bounded, so an
    /// old generation does not drain forever a queue a new one (with the same configuration)
    /// keeps filling.
    finishing: Option<usize>,
}

impl Exporter {
    /// Parses the plugin configuration, opens the spool and starts the tick; the error is logged
    /// and refuses the configuration.
    pub fn configure(&mut self, host: &dyn RootHost, bytes: &[u8]) -> Result<(), String> {
        let refuse = |message: String| {
            let message = format!("trace filter configuration refused: {message}");
            host.log(Severity::Error, &message);
            message
        };
        let config = TraceConfig::parse(bytes).map_err(refuse)?;
        if config.exporter.format == ExportFormat::OtlpGrpc && !host.has_grpc() {
            return Err(refuse("`otlp_grpc` needs gRPC callouts, which this build of the filter has not: use the proxy-wasm module, or `otlp_proto`".into()));
        }
        let spool = Spool::open(host, bytes, config.exporter.max_queued_spans, config.exporter.batch_size)
            .ok_or_else(|| refuse("the proxy has no shared queue for the spans".into()))?;
        let mut resource =
            Resource { attributes: vec![("service.name".into(), Value::from(config.service_name.as_str()))] };
        for (k, v) in &config.resource_attributes {
            resource.attributes.push((k.clone(), Value::from(v.as_str())));
        }
        resource.attributes.push(("telemetry.sdk.name".into(), "wasmtrace".into()));
        let provenance = if config.record_filter_provenance { Provenance::read(host) } else { Provenance::default() };
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config: Rc::new(config),
            resource,
            spool,
            counters: Counters::define(host),
            scratch: Vec::new(),
            provenance,
        })));
        host.set_tick_period(TICK);
        Ok(())
    }

    /// A stream's tracer, once configured.
    pub fn stream(&self) -> Option<StreamTracer> {
        Some(StreamTracer::new(self.shared.clone()?))
    }

    /// The tick: folds this VM's count into the spool's, and sends a batch when one is due.
    pub fn on_tick(&mut self, host: &dyn RootHost) {
        let Some(shared) = self.shared.clone() else { return };
        shared.borrow_mut().spool.fold(host);
        self.export_if_due(host, host.now(), &shared);
    }

    /// The host's word that spans went into the spool `queue` (it tells the VM that registered
    /// the queue last, as Envoy does, coalescing what arrived since it last told). An idle
    /// exporter sends a full batch at once instead of at the next tick: a load that finishes
    /// more spans in one tick than the spool holds would otherwise fill it before the first
    /// batch went.
    pub fn on_queue_ready(&mut self, host: &dyn RootHost, queue: u32) {
        // Busy exporting (the answer chains the next batch) or shutting down: nothing to do,
        // and nothing spent: this runs as often as spans arrive.
        if self.in_flight.is_some() || self.finishing.is_some() {
            return;
        }
        let Some(shared) = self.shared.clone() else { return };
        if shared.borrow().spool.queue() != queue {
            return;
        }
        let now = host.now();
        // The fold is two host calls and a compare-and-swap on a count every worker writes: at
        // most one per interval, however fast spans arrive (a clock stepped back counts as the
        // interval passed, so a look is never put off).
        if self.last_ready.is_some_and(|at| now.duration_since(at).is_ok_and(|waited| waited < READY_INTERVAL)) {
            return;
        }
        self.last_ready = Some(now);
        shared.borrow_mut().spool.fold(host);
        // Only a full batch goes now: spans that wait for the flush interval go at a tick, as
        // they would without this call, so a light load is exported as before.
        if shared.borrow().spool.queued() >= shared.borrow().config.exporter.batch_size {
            self.export_if_due(host, now, &shared);
        }
    }

    /// Sends a batch if the spool holds one, or holds spans that waited a flush interval, unless
    /// an export is in flight or a collector asked every VM of the spool to wait.
    fn export_if_due(&mut self, host: &dyn RootHost, now: SystemTime, shared: &Rc<RefCell<Shared>>) {
        let batch = {
            let shared = shared.borrow();
            // While shutting down, the drain runs from the export answers alone (a tick's
            // export would report `done` a second time).
            if self.in_flight.is_some() || self.finishing.is_some() {
                return;
            }
            let exporter = &shared.config.exporter;
            let queued = shared.spool.queued();
            let elapsed = |at: Option<SystemTime>| {
                at.is_none_or(|at| now.duration_since(at).unwrap_or_default() >= exporter.flush_interval)
            };
            let due = if queued > 0 { elapsed(self.last_flush) } else { elapsed(self.last_probe) };
            if queued < exporter.batch_size && !due {
                return;
            }
            if shared.spool.retry_at(host).is_some_and(|at| now_nanos(now) < at) {
                return;
            }
            exporter.batch_size
        };
        self.flush(host, now, batch);
    }

    /// An export's answer. Returns true when a shutdown flush has finished (the host's `done`).
    pub fn on_response(&mut self, host: &dyn RootHost, token: u32, response: &ExportResponse<'_>) -> bool {
        let Some((expected, items)) = self.in_flight.take() else { return false };
        if token != expected {
            self.in_flight = Some((expected, items));
            return false;
        }
        let Some(shared) = self.shared.clone() else { return false };
        let now = host.now();
        let status = response.status;
        let retryable = status.retryable();
        let sent = items.len();
        // Spans still waiting once this batch is in: the collector keeps up, so the next batch
        // goes at once rather than at the next tick (one batch a tick per VM would cap export
        // at a few thousand spans a second, and drop the rest).
        let mut backlog = false;
        let batch = {
            let mut shared = shared.borrow_mut();
            let counters = shared.counters;
            if status.accepted() {
                add(host, counters.exported, sent);
                // The last take filled its batch without finding the queue empty: there may be
                // more (the count would not say: other workers' spans are in it a tick late).
                // Unless a collector asked every VM of the spool to wait (a 429 to another).
                backlog = !self.drained && shared.spool.retry_at(host).is_none_or(|at| now_nanos(now) >= at);
            } else if retryable {
                // Back into the spool, outside this VM: whichever VM exports next (this one, a
                // worker's, the next generation's) sends them, once the collector's wait is over.
                let wait = response
                    .retry_after
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
                shared.spool.set_retry_at(host, now_nanos(now + wait));
                let kept = items.iter().filter(|item| shared.spool.push(host, item).is_ok()).count();
                add(host, counters.dropped, sent - kept);
                if self.finishing.is_some() {
                    // The collector asked to wait: the spans wait in the spool, not in this VM.
                    self.finishing = Some(0);
                }
            } else {
                host.log(Severity::Warn, &format!("span export failed with {status}; {sent} spans lost"));
                add(host, counters.failed, sent);
            }
            shared.config.exporter.batch_size
        };
        let Some(budget) = self.finishing else {
            if backlog {
                self.flush(host, now, batch);
            }
            return false;
        };
        let budget = budget.saturating_sub(sent);
        self.finishing = Some(budget);
        if budget > 0 && !self.drained {
            self.flush(host, now, batch.min(budget));
        }
        self.in_flight.is_none()
    }

    /// The VM is going: drain the spool. True when done now; false when an export is in flight
    /// (the host hears `done` from [`on_response`](Self::on_response)).
    pub fn on_shutdown(&mut self, host: &dyn RootHost) -> bool {
        let Some(shared) = self.shared.clone() else { return true };
        let (budget, batch) = {
            let mut shared = shared.borrow_mut();
            shared.spool.fold(host);
            // Slack for what the count has not seen yet (the other workers' last tick).
            let batch = shared.config.exporter.batch_size;
            (shared.spool.queued().saturating_add(batch), batch)
        };
        self.finishing = Some(budget);
        self.drained = false;
        if self.in_flight.is_none() {
            self.flush(host, host.now(), batch.min(budget));
        }
        self.in_flight.is_none()
    }

    /// Takes up to `limit` spans from the spool and sends them.
    fn flush(&mut self, host: &dyn RootHost, now: SystemTime, limit: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let (body, items, config) = {
            let mut shared = shared.borrow_mut();
            let format = shared.config.exporter.format;
            let taken = shared.spool.take(host, limit, format);
            shared.spool.fold(host);
            self.last_probe = Some(now);
            self.drained = taken.empty;
            if taken.malformed > 0 {
                host.log(
                    Severity::Warn,
                    &format!("{} items in the span queue were not spans; dropped", taken.malformed),
                );
                add(host, shared.counters.dropped, taken.malformed);
            }
            if taken.items.is_empty() {
                return;
            }
            (spool::body(format, &shared.resource, &taken.items), taken.items, shared.config.clone())
        };
        let exporter = &config.exporter;
        let content_type = match exporter.format {
            ExportFormat::OtlpProto => otlp::PROTOBUF_CONTENT_TYPE,
            ExportFormat::OtlpJson => otlp::JSON_CONTENT_TYPE,
            ExportFormat::ZipkinJson => zipkin::CONTENT_TYPE,
            ExportFormat::OtlpGrpc => "application/grpc",
        };
        let headers = [
            (":method", "POST"),
            (":path", exporter.path.as_str()),
            (":authority", exporter.authority.as_str()),
            ("content-type", content_type),
        ];
        self.last_flush = Some(now);
        let sent = match exporter.format {
            ExportFormat::OtlpGrpc => {
                host.grpc_call(&exporter.grpc_service, OTLP_TRACE_SERVICE, "Export", &body, exporter.timeout)
            }
            _ => host.http_call(&exporter.cluster, &headers, &body, exporter.timeout),
        };
        match sent {
            Ok(token) => self.in_flight = Some((token, items)),
            Err(why) => {
                host.log(Severity::Warn, &format!("cannot export to cluster `{}`: {why}", exporter.cluster));
                add(host, shared.borrow().counters.failed, items.len());
            }
        }
    }
}
