//! RFC 7807 problem details: every error a service returns is `application/problem+json`
//! with a stable machine-readable `code`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable identifier clients can switch on (`job_not_found`, `upstream_timeout`, ...).
    pub code: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, title: &str) -> Problem {
        Problem {
            kind: format!("/problems/{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: None,
            code: code.to_string(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_serialise_as_rfc7807_with_a_code() {
        let p = Problem::new(StatusCode::NOT_FOUND, "job_not_found", "Job not found").detail("no job 42");
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["type"], "/problems/job_not_found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["code"], "job_not_found");
        assert_eq!(v["detail"], "no job 42");
        let response = p.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
