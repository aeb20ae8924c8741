from django.urls import path

from accounts import views

urlpatterns = [
    path("account/tokens/", views.token_list, name="api_token_list"),
    path("account/notifications/", views.notification_settings, name="notification_settings"),
    path("notifications/", views.notification_list, name="notification_list"),
    path("notifications/read/", views.notifications_mark_all_read, name="notifications_mark_all_read"),
    path("notifications/<int:pk>/", views.notification_open, name="notification_open"),
    path("account/tokens/<str:key>/revoke/", views.token_revoke, name="api_token_revoke"),
    path("organizations/", views.organization_list, name="organization_list"),
    path("organizations/new/", views.organization_create, name="organization_create"),
    path("organizations/<int:pk>/", views.organization_detail, name="organization_detail"),
    path("organizations/<int:pk>/edit/", views.organization_edit, name="organization_edit"),
    path("organizations/<int:pk>/invite/", views.invitation_create, name="invitation_create"),
    path("organization/", views.my_organization, name="my_organization"),
    path("members/<int:pk>/", views.membership_update, name="membership_update"),
    path("invitations/<int:pk>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("invitations/accept/<str:token>/", views.invitation_accept, name="invitation_accept"),
]
